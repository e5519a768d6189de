output "api_endpoint" {
  description = "Base URL of the API: POST $api_endpoint/v1/lookup with an Authorization: Bearer <JWT> header."
  value       = module.edgecache.api_endpoint
}

output "function_name" {
  description = "Name of the Lambda function."
  value       = module.edgecache.function_name
}

output "bucket" {
  description = "Snapshot bucket."
  value       = module.edgecache.bucket
}

output "table" {
  description = "Response-body table."
  value       = module.edgecache.table
}

output "layer_arn" {
  description = "Runtime layer version."
  value       = module.edgecache.layer_arn
}
