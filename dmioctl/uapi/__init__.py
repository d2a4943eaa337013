"""Binary layouts and constants of the kernel's user-space API."""
