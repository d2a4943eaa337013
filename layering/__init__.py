"""Copy-on-write image chains on a device-mapper thin-pool."""
