# -- S3: per-user snapshots under s3://BUCKET/edgecache/ ---------------------------------

resource "aws_s3_bucket" "snapshots" {
  #checkov:skip=CKV_AWS_18:Server access logs need a second, dedicated log bucket; object-level access is audited with CloudTrail S3 data events where required.
  #checkov:skip=CKV_AWS_144:Snapshots are a cache that refills from traffic and versioning already guards against overwrites; cross-region replication would double storage for data that may be lost.
  #checkov:skip=CKV2_AWS_62:Nothing consumes snapshot events: event notifications would have no destination.
  bucket        = var.bucket_name
  bucket_prefix = var.bucket_name == null ? "${var.name}-snapshots-" : null
  force_destroy = false
  tags          = local.tags
}

resource "aws_s3_bucket_ownership_controls" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    object_ownership = "BucketOwnerEnforced"
  }
}

resource "aws_s3_bucket_public_access_block" "snapshots" {
  bucket                  = aws_s3_bucket.snapshots.id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_versioning" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  versioning_configuration {
    status = "Enabled"
  }
}

resource "aws_s3_bucket_server_side_encryption_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    apply_server_side_encryption_by_default {
      sse_algorithm     = var.snapshot_sse_algorithm
      kms_master_key_id = var.snapshot_sse_algorithm == "aws:kms" ? var.kms_key_arn : null
    }
    bucket_key_enabled = var.snapshot_sse_algorithm == "aws:kms"
  }
}

resource "aws_s3_bucket_lifecycle_configuration" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id

  rule {
    id     = "expire-noncurrent-abort-multipart"
    status = "Enabled"

    filter {
      prefix = ""
    }

    noncurrent_version_expiration {
      noncurrent_days = var.noncurrent_version_expiration_days
    }

    abort_incomplete_multipart_upload {
      days_after_initiation = var.abort_incomplete_multipart_upload_days
    }
  }

  # A lifecycle rule on noncurrent versions needs versioning to be on first.
  depends_on = [aws_s3_bucket_versioning.snapshots]
}

data "aws_iam_policy_document" "bucket" {
  statement {
    sid       = "DenyInsecureTransport"
    effect    = "Deny"
    actions   = ["s3:*"]
    resources = [aws_s3_bucket.snapshots.arn, "${aws_s3_bucket.snapshots.arn}/*"]

    principals {
      type        = "*"
      identifiers = ["*"]
    }

    condition {
      test     = "Bool"
      variable = "aws:SecureTransport"
      values   = ["false"]
    }
  }
}

resource "aws_s3_bucket_policy" "snapshots" {
  bucket = aws_s3_bucket.snapshots.id
  policy = data.aws_iam_policy_document.bucket.json

  # S3 refuses a bucket policy while the public access block is being applied.
  depends_on = [aws_s3_bucket_public_access_block.snapshots]
}

# -- DynamoDB: response bodies (hybrid layout), read only on a hit -----------------------

resource "aws_dynamodb_table" "bodies" {
  name                        = local.table_name
  billing_mode                = "PAY_PER_REQUEST"
  hash_key                    = "pk"
  deletion_protection_enabled = var.deletion_protection

  attribute {
    name = "pk"
    type = "S"
  }

  ttl {
    attribute_name = "expires_at"
    enabled        = true
  }

  point_in_time_recovery {
    enabled = true
  }

  server_side_encryption {
    enabled     = true
    kms_key_arn = var.kms_key_arn
  }

  tags = local.tags
}
