"""What `apex serve` shows a browser."""
