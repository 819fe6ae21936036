-- TLS certificates and ACME account keys (package certcache, an
-- autocert.Cache), shared by every replica behind a load balancer. A table
-- of its own, not rows of the cache table: the culler works on the cache
-- table alone, so no MaxEntries, MaxBytes or MaxAge, no expiry sweep and no
-- Clear can remove a certificate (a removed certificate is issued again,
-- and issuing runs into the CA's rate limits), and certificates take no
-- room from the cache's entries under those limits.
--
-- key:        autocert's key (a domain, "+rsa", "+token", the account key's
--             name) after certcache's key prefix. COLLATE "C" compares bytes.
-- data:       what autocert stored (PEM: private key and chain), or its
--             sealed form when certcache has a Sealer.
-- updated_at: when the row was last written, by the database's clock, for
--             operators; nothing removes rows by it.
--
-- One statement, so the file also runs where each migration must be a
-- single command (Citus).
CREATE TABLE IF NOT EXISTS dbcache_certificates (
    key        text COLLATE "C" PRIMARY KEY,
    data       bytea NOT NULL,
    updated_at timestamptz NOT NULL DEFAULT statement_timestamp()
);
