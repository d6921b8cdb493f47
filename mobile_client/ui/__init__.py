"""The Kivy user interface: one `.kv` file per screen under `kv/`, loaded when first shown."""
