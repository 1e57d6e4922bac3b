"""Import and export: files as Chinese offices exchange them, in and out of the store."""
