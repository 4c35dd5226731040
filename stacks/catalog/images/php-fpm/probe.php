<?php
// Verification probe: proves PHP really runs through FPM (expected output starts with "42").
echo 6 * 7, " ", PHP_VERSION, " ", PHP_SAPI, "\n";
