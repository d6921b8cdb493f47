"""Server logic as plain functions and classes (routes only translate HTTP to these)."""
