# The function's role: exactly the snapshot prefix, the body table, its own log group and
# the one secret. Nothing else.

data "aws_iam_policy_document" "assume" {
  statement {
    sid     = "LambdaAssumesRole"
    actions = ["sts:AssumeRole"]

    principals {
      type        = "Service"
      identifiers = ["lambda.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "function" {
  name               = "${var.name}-function"
  description        = "edgecache function ${var.name}: snapshot prefix, body table, own log group, upstream key secret"
  assume_role_policy = data.aws_iam_policy_document.assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "function" {
  statement {
    sid       = "SnapshotObjects"
    actions   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"]
    resources = ["${aws_s3_bucket.snapshots.arn}/${local.s3_prefix}*"]
  }

  # Without ListBucket S3 answers GetObject on a missing key (a user never seen before)
  # with 403 instead of 404, which the store must treat as access denied. A listing is
  # allowed only under the prefix; GetObject's implicit check carries no s3:prefix, hence
  # IfExists.
  statement {
    sid       = "SnapshotMissingKeyIs404"
    actions   = ["s3:ListBucket"]
    resources = [aws_s3_bucket.snapshots.arn]

    condition {
      test     = "StringLikeIfExists"
      variable = "s3:prefix"
      values   = ["${local.s3_prefix}*"]
    }
  }

  statement {
    sid       = "BodyItems"
    actions   = ["dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem"]
    resources = [aws_dynamodb_table.bodies.arn]
  }

  statement {
    sid       = "OwnLogGroup"
    actions   = ["logs:CreateLogStream", "logs:PutLogEvents"]
    resources = ["${aws_cloudwatch_log_group.function.arn}:*"]
  }

  statement {
    sid       = "UpstreamApiKey"
    actions   = ["secretsmanager:GetSecretValue"]
    resources = [var.upstream_api_key_secret_arn]
  }

  dynamic "statement" {
    for_each = var.kms_key_arn == null ? [] : [var.kms_key_arn]

    content {
      sid       = "DataKey"
      actions   = ["kms:Decrypt", "kms:GenerateDataKey", "kms:DescribeKey"]
      resources = [statement.value]
    }
  }

  dynamic "statement" {
    for_each = var.upstream_api_key_kms_key_arn == null ? [] : [var.upstream_api_key_kms_key_arn]

    content {
      sid       = "UpstreamApiKeyDecrypt"
      actions   = ["kms:Decrypt"]
      resources = [statement.value]

      condition {
        test     = "StringLike"
        variable = "kms:ViaService"
        values   = ["secretsmanager.*.amazonaws.com"]
      }
    }
  }
}

resource "aws_iam_role_policy" "function" {
  name   = "${var.name}-function"
  role   = aws_iam_role.function.id
  policy = data.aws_iam_policy_document.function.json
}

# X-Ray's PutTraceSegments/PutTelemetryRecords have no resource-level permissions: the
# AWS managed policy is the narrowest grant there is.
resource "aws_iam_role_policy_attachment" "xray" {
  count      = var.tracing_enabled ? 1 : 0
  role       = aws_iam_role.function.name
  policy_arn = "arn:${data.aws_partition.current.partition}:iam::aws:policy/AWSXRayDaemonWriteAccess"
}
