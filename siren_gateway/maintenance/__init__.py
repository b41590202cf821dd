"""Maintenance: work orders from the fault to the siren's own proof of repair."""
