"""Federation between independent RENT-A-HAL installations (signed HTTP between them)."""
