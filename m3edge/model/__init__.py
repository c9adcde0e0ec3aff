"""The torch reference agent (host side only: importing this package imports torch)."""
