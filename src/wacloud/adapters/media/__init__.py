"""Object stores for media files."""
