<?php
// Stackport's PHP sample app. nginx only needs this file to exist (so that "/" is routed to
// index.php); PHP-FPM runs its own copy at the same path in the php-fpm image.
header('Content-Type: text/html; charset=utf-8');
$version = htmlspecialchars(PHP_VERSION, ENT_QUOTES);
echo "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Stackport PHP</title></head>\n";
echo "<body>\n<h1>Stackport PHP {$version} is running</h1>\n";
echo "<p>This is the built-in sample app. Deploy your application to replace it.</p>\n</body>\n</html>\n";
