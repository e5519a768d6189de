data "aws_partition" "current" {}

locals {
  runtime       = "python3.12"
  table_name    = coalesce(var.table_name, "${var.name}-bodies")
  s3_prefix     = "edgecache/"
  function_logs = "/aws/lambda/${var.name}"
  api_logs      = "/aws/apigateway/${var.name}"

  tags = merge(var.tags, { "edgecache:deployment" = var.name })

  # Precedence: the layer's defaults, then extra_environment, then the module's own wiring
  # (which extra_environment cannot redirect). Names as read by
  # edgecache_functions.handler.service_from_environment.
  environment = merge(
    {
      EDGECACHE_HOME = "/opt/edgecache-home" # where functions/build_layer.py puts the encoder
      # Load the encoder, classifier and AWS clients in Lambda's init phase (SnapStart's snapshot).
      EDGECACHE_EAGER_INIT = "1"
    },
    var.extra_environment,
    {
      EDGECACHE_BUCKET              = aws_s3_bucket.snapshots.id
      EDGECACHE_PREFIX              = local.s3_prefix
      EDGECACHE_S3_SSE              = var.snapshot_sse_algorithm
      EDGECACHE_TABLE               = aws_dynamodb_table.bodies.name
      EDGECACHE_UPSTREAM_URL        = var.upstream_url
      EDGECACHE_UPSTREAM_SECRET_ARN = var.upstream_api_key_secret_arn
    },
    var.kms_key_arn != null && var.snapshot_sse_algorithm == "aws:kms" ? { EDGECACHE_S3_KMS_KEY_ID = var.kms_key_arn } : {},
  )
}
