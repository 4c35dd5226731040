<?php
// LAMP sample: proves PHP runs and reaches MariaDB with the settings Stackport injects.
$url = getenv('DATABASE_URL');
$db = 'not configured';
if ($url) {
    $p = parse_url($url);
    try {
        $pdo = new PDO(sprintf('mysql:host=%s;port=%d;dbname=%s', $p['host'], $p['port'] ?? 3306, ltrim($p['path'], '/')),
                       urldecode($p['user']), urldecode($p['pass'] ?? ''), [PDO::ATTR_ERRMODE => PDO::ERRMODE_EXCEPTION]);
        $pdo->exec('CREATE TABLE IF NOT EXISTS visits (id INT AUTO_INCREMENT PRIMARY KEY, at TIMESTAMP DEFAULT CURRENT_TIMESTAMP)');
        $pdo->exec('INSERT INTO visits () VALUES ()');
        $db = 'connected, ' . $pdo->query('SELECT COUNT(*) FROM visits')->fetchColumn() . ' visits';
    } catch (Exception $e) {
        $db = 'error: ' . htmlspecialchars($e->getMessage());
    }
}
?><!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>LAMP on Stackport</title></head>
<body><h1>Hello from LAMP on Stackport</h1>
<p>PHP <?= htmlspecialchars(PHP_VERSION) ?> via PHP-FPM. Database: <?= $db ?>.</p></body></html>
