-- Reverting drops every stored certificate and account key: autocert then
-- issues new ones (mind the CA's rate limits).
DROP TABLE IF EXISTS dbcache_certificates;
