"""The file formats every stage shares, each defined once; nothing here imports a stage."""
