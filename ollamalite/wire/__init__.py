"""Wire schemas per protocol (marshmallow): what a request may hold, loaded into plain dicts."""
