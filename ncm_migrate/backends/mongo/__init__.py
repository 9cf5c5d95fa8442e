"""MongoDB services (pymongo): the backend, and what only MongoDB needs beside it.

The modules are imported by name (`backends.mongo.backend`, `.lease`, `.backup`); this
package re-exports nothing. The helpers that revision files call stay at
`ncm_migrate.mongo_ops`, the path users' revisions import.
"""
