<?php
// Verification probe: the extensions typical applications (WordPress, Laravel, Symfony) need.
$wanted = ['mysqli', 'pdo_mysql', 'pgsql', 'pdo_pgsql', 'gd', 'curl', 'mbstring', 'xml', 'dom',
           'simplexml', 'zip', 'intl', 'bcmath', 'redis', 'Zend OPcache'];
$missing = array_values(array_filter($wanted, fn ($e) => !extension_loaded($e)));
$opcache = function_exists('opcache_get_status') && opcache_get_status(false) !== false;
if ($missing) {
    echo "missing extensions: ", implode(', ', $missing), "\n";
} elseif (!$opcache) {
    echo "opcache is not enabled\n";
} else {
    echo "extensions ok: ", implode(' ', $wanted), "\n";
}
