<?php
// Stackport's PHP sample app, run when /srv/app is empty: the web server in front (nginx or
// Apache) then uses /usr/share/stackport/sample as document root in both containers.
header('Content-Type: text/html; charset=utf-8');
$version = htmlspecialchars(PHP_VERSION, ENT_QUOTES);
echo "<!doctype html>\n<html lang=\"en\">\n<head><meta charset=\"utf-8\"><title>Stackport PHP</title></head>\n";
echo "<body>\n<h1>Stackport PHP {$version} is running</h1>\n";
echo "<p>This is the built-in sample app. Deploy your application to replace it.</p>\n</body>\n</html>\n";
