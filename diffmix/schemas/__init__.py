"""The one source of truth for columns, files and configs."""
