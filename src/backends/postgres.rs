//! A Shared tenant's database and login role on the platform's shared PostgreSQL.
