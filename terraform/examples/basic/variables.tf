variable "region" {
  description = "AWS region to deploy to."
  type        = string
  default     = "eu-west-1"
}

variable "function_zip_path" {
  description = "Function package built by the app team (see ../../README.md)."
  type        = string
  default     = "../../../build/function/edgecache-function.zip"
}

variable "layer_zip_path" {
  description = "Runtime layer built for the chosen architecture (see ../../README.md)."
  type        = string
  default     = "../../../build/layer/edgecache-lambda-layer-py312-arm64.zip"
}

variable "jwt_issuer" {
  description = "Issuer of the tokens the API accepts, e.g. a Cognito user pool: https://cognito-idp.REGION.amazonaws.com/POOL_ID."
  type        = string
}

variable "jwt_audience" {
  description = "Accepted token audiences (for Cognito: the app client id)."
  type        = list(string)
}

variable "upstream_api_key_secret_arn" {
  description = "Full ARN of the Secrets Manager secret that holds the upstream LLM API key (create it first; its value never enters Terraform)."
  type        = string
}

variable "upstream_url" {
  description = "OpenAI-compatible upstream that answers cache misses."
  type        = string
  default     = "https://api.openai.com/v1"
}
