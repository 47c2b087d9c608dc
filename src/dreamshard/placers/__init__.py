"""Placers: everything that turns a task into a placement, and the registry that knows
them all by name and kind (``placers.registry``).

Imports the method, backends, data and the core."""
