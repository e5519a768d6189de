output "api_endpoint" {
  description = "Base URL of the HTTP API (routes under /v1/...)."
  value       = aws_apigatewayv2_stage.default.invoke_url
}

output "api_id" {
  description = "ID of the HTTP API."
  value       = aws_apigatewayv2_api.this.id
}

output "function_name" {
  description = "Name of the Lambda function."
  value       = aws_lambda_function.api.function_name
}

output "function_arn" {
  description = "ARN of the Lambda function."
  value       = aws_lambda_function.api.arn
}

output "function_role_arn" {
  description = "ARN of the function's execution role."
  value       = aws_iam_role.function.arn
}

output "layer_arn" {
  description = "ARN (with version) of the runtime layer."
  value       = aws_lambda_layer_version.runtime.arn
}

output "bucket" {
  description = "Name of the snapshot bucket (snapshots under the edgecache/ prefix)."
  value       = aws_s3_bucket.snapshots.id
}

output "bucket_arn" {
  description = "ARN of the snapshot bucket."
  value       = aws_s3_bucket.snapshots.arn
}

output "table" {
  description = "Name of the DynamoDB table for response bodies."
  value       = aws_dynamodb_table.bodies.name
}

output "table_arn" {
  description = "ARN of the DynamoDB table for response bodies."
  value       = aws_dynamodb_table.bodies.arn
}

output "function_log_group" {
  description = "CloudWatch log group of the function."
  value       = aws_cloudwatch_log_group.function.name
}

output "api_log_group" {
  description = "CloudWatch log group of the API's access logs."
  value       = aws_cloudwatch_log_group.api.name
}
