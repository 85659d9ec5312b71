"""Load and fault tests of ``captum-vit serve`` (loopback only, bounded)."""
