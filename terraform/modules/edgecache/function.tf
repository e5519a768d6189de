resource "aws_cloudwatch_log_group" "function" {
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable. The default (30 days) is deliberately short: these logs carry user ids and errors quoting query text; set 365 or more where a compliance regime requires it.
  name              = local.function_logs
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}

resource "aws_lambda_layer_version" "runtime" {
  layer_name               = "${var.name}-runtime"
  description              = "edgecache runtime (${local.runtime}, ${var.architecture})"
  filename                 = var.layer_zip_path
  source_code_hash         = filebase64sha256(var.layer_zip_path)
  compatible_runtimes      = [local.runtime]
  compatible_architectures = [var.architecture]
}

resource "aws_lambda_function" "api" {
  #checkov:skip=CKV_AWS_116:API Gateway invokes the function synchronously and gets every error back; a DLQ only receives failed asynchronous invocations, and there are none.
  #checkov:skip=CKV_AWS_117:The function reaches only public AWS endpoints (S3, DynamoDB, Secrets Manager) over TLS with IAM auth, and the public upstream LLM API; a VPC would add a NAT gateway and cold-start cost without isolating anything.
  #checkov:skip=CKV_AWS_272:The package is deployed from a local zip built by CI (function_zip_path); Lambda code signing needs AWS Signer jobs writing signed zips to S3, which this deployment does not use.
  function_name    = var.name
  description      = "edgecache: per-user semantic cache behind the ${var.name} HTTP API"
  role             = aws_iam_role.function.arn
  runtime          = local.runtime
  handler          = var.handler
  architectures    = [var.architecture]
  filename         = var.function_zip_path
  source_code_hash = filebase64sha256(var.function_zip_path)
  layers           = [aws_lambda_layer_version.runtime.arn]
  memory_size      = var.memory_size
  timeout          = var.timeout
  kms_key_arn      = var.kms_key_arn

  reserved_concurrent_executions = var.reserved_concurrency

  # SnapStart snapshots published versions only; API Gateway invokes that version.
  publish = var.snap_start

  dynamic "snap_start" {
    for_each = var.snap_start ? [1] : []
    content {
      apply_on = "PublishedVersions"
    }
  }

  environment {
    variables = local.environment
  }

  tracing_config {
    mode = var.tracing_enabled ? "Active" : "PassThrough"
  }

  tags = local.tags

  # The log group must exist (with its retention) before the first invocation would
  # create one without; the role must hold its permissions before the function runs.
  depends_on = [
    aws_cloudwatch_log_group.function,
    aws_iam_role_policy.function,
    aws_iam_role_policy_attachment.xray,
  ]
}
