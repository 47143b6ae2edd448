"""LGPD: finding, exporting, erasing and purging a contact's data everywhere we keep it."""
