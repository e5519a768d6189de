module "edgecache" {
  source = "../../modules/edgecache"

  name              = "edgecache-basic"
  function_zip_path = var.function_zip_path
  layer_zip_path    = var.layer_zip_path
  architecture      = "arm64"
  memory_size       = 1769 # one full vCPU for the encoder

  jwt_issuer   = var.jwt_issuer
  jwt_audience = var.jwt_audience

  upstream_url                = var.upstream_url
  upstream_api_key_secret_arn = var.upstream_api_key_secret_arn

  snapshot_sse_algorithm = "aws:kms" # the account's aws/s3 key, with an S3 Bucket Key
  reserved_concurrency   = 20
  log_retention_days     = 30
  tracing_enabled        = true

  extra_environment = {
    EDGECACHE_MAX_USERS = "128" # users' caches kept warm per container
  }
}
