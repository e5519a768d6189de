resource "aws_apigatewayv2_api" "this" {
  name          = var.name
  description   = "edgecache: per-user semantic cache (JWT-authenticated)"
  protocol_type = "HTTP"

  dynamic "cors_configuration" {
    for_each = length(var.cors_allow_origins) > 0 ? [var.cors_allow_origins] : []

    content {
      allow_origins = cors_configuration.value
      allow_methods = distinct([for r in var.routes : split(" ", r)[0]])
      allow_headers = ["authorization", "content-type", "cache-control"]
      expose_headers = [
        "x-edgecache",
        "x-edgecache-entry",
        "x-edgecache-similarity",
      ]
      max_age = 600
    }
  }

  tags = local.tags
}

resource "aws_apigatewayv2_authorizer" "jwt" {
  api_id           = aws_apigatewayv2_api.this.id
  name             = "${var.name}-jwt"
  authorizer_type  = "JWT"
  identity_sources = ["$request.header.Authorization"]

  jwt_configuration {
    issuer   = var.jwt_issuer
    audience = var.jwt_audience
  }
}

resource "aws_apigatewayv2_integration" "function" {
  api_id                 = aws_apigatewayv2_api.this.id
  integration_type       = "AWS_PROXY"
  integration_method     = "POST"
  integration_uri        = var.snap_start ? aws_lambda_function.api.qualified_invoke_arn : aws_lambda_function.api.invoke_arn
  payload_format_version = "2.0"
  timeout_milliseconds   = 30000
}

# Every route requires a valid JWT; the handler takes the user id from the token's claims
# (requestContext.authorizer.jwt.claims.sub), never from the request body.
resource "aws_apigatewayv2_route" "this" {
  for_each = toset(var.routes)

  api_id               = aws_apigatewayv2_api.this.id
  route_key            = each.value
  target               = "integrations/${aws_apigatewayv2_integration.function.id}"
  authorization_type   = "JWT"
  authorizer_id        = aws_apigatewayv2_authorizer.jwt.id
  authorization_scopes = length(var.jwt_scopes) > 0 ? var.jwt_scopes : null
}

resource "aws_cloudwatch_log_group" "api" {
  #checkov:skip=CKV_AWS_338:Retention is the log_retention_days variable. The default (30 days) is deliberately short: these logs carry user ids and errors quoting query text; set 365 or more where a compliance regime requires it.
  name              = local.api_logs
  retention_in_days = var.log_retention_days
  kms_key_id        = var.kms_key_arn
  tags              = local.tags
}

resource "aws_apigatewayv2_stage" "default" {
  api_id      = aws_apigatewayv2_api.this.id
  name        = "$default"
  auto_deploy = true

  access_log_settings {
    destination_arn = aws_cloudwatch_log_group.api.arn
    format = jsonencode({
      requestId      = "$context.requestId"
      requestTime    = "$context.requestTime"
      routeKey       = "$context.routeKey"
      status         = "$context.status"
      sourceIp       = "$context.identity.sourceIp"
      user           = "$context.authorizer.claims.sub"
      authorizerErr  = "$context.authorizer.error"
      integrationErr = "$context.integrationErrorMessage"
      latencyMs      = "$context.responseLatency"
      responseLength = "$context.responseLength"
    })
  }

  default_route_settings {
    throttling_burst_limit   = var.throttling_burst_limit
    throttling_rate_limit    = var.throttling_rate_limit
    detailed_metrics_enabled = true
  }

  tags = local.tags
}

# API Gateway may invoke the function for exactly the configured routes, on any stage.
resource "aws_lambda_permission" "api" {
  for_each = toset(var.routes)

  statement_id  = "AllowHttpApi-${substr(sha256(each.value), 0, 16)}"
  action        = "lambda:InvokeFunction"
  function_name = aws_lambda_function.api.function_name
  qualifier     = var.snap_start ? aws_lambda_function.api.version : null
  principal     = "apigateway.amazonaws.com"
  source_arn    = "${aws_apigatewayv2_api.this.execution_arn}/*/${split(" ", each.value)[0]}${split(" ", each.value)[1]}"
}
