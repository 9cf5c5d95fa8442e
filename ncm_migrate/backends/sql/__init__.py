"""SQL services (SQLAlchemy and Alembic): the backend, everything only SQL needs beside it.

The modules are imported by name (`backends.sql.backend`, `.autogen`, `.backup`,
`.metadata`, ...); this package re-exports nothing, so importing one of them
(the SQL dumps, say) does not import the others.
"""
