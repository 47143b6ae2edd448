"""Relational storage: the registry ("master") DB and each tenant's own DB."""
