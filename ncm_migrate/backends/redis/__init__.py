"""Redis services (redis-py): the backend, and what only Redis needs beside it.

The modules are imported by name (`backends.redis.backend`, `.lease`, `.backup`); this
package re-exports nothing.
"""
