# -- naming ------------------------------------------------------------------------------

variable "name" {
  description = "Name of the deployment: prefixes every resource (function, API, table, bucket, role, log groups). 3-24 characters, lowercase letters, digits and hyphens."
  type        = string
  default     = "edgecache"

  validation {
    # The bucket prefix "<name>-snapshots-" may be at most 37 characters.
    condition     = can(regex("^[a-z][a-z0-9-]{1,22}[a-z0-9]$", var.name))
    error_message = "name must be 3-24 characters: lowercase letters, digits and hyphens, starting with a letter and not ending with a hyphen."
  }
}

variable "tags" {
  description = "Tags added to every taggable resource of the module."
  type        = map(string)
  default     = {}
}

# -- code --------------------------------------------------------------------------------

variable "function_zip_path" {
  description = "Path of the function package (.zip) built by the app team: it holds the handler module named by `handler`."
  type        = string

  validation {
    condition     = can(regex("\\.zip$", var.function_zip_path))
    error_message = "function_zip_path must name a .zip file."
  }
}

variable "layer_zip_path" {
  description = "Path of the Lambda layer (.zip, packages under python/): edgecache, onnxruntime, usearch, tokenizers, numpy, msgpack and the int8 encoder. At most 50 MB zipped for a direct upload; function + layer at most 250 MB unzipped."
  type        = string

  validation {
    condition     = can(regex("\\.zip$", var.layer_zip_path))
    error_message = "layer_zip_path must name a .zip file."
  }
}

variable "handler" {
  description = "Handler of the function, module.function inside the function package."
  type        = string
  default     = "edgecache_functions.handler.handle"

  validation {
    condition     = can(regex("^[A-Za-z_][A-Za-z0-9_]*(\\.[A-Za-z_][A-Za-z0-9_]*)+$", var.handler))
    error_message = "handler must be a dotted Python path such as edgecache_functions.handler.handle."
  }
}

variable "architecture" {
  description = "Instruction set of the function and the layer: arm64 (Graviton, cheaper per GB-second) or x86_64. The layer's wheels must be built for the same one."
  type        = string
  default     = "arm64"

  validation {
    condition     = contains(["arm64", "x86_64"], var.architecture)
    error_message = "architecture must be arm64 or x86_64."
  }
}

variable "memory_size" {
  description = "Function memory in MB (CPU grows with it; the encoder runs on one core at 1769 MB)."
  type        = number
  default     = 1024

  validation {
    condition     = var.memory_size >= 128 && var.memory_size <= 10240 && floor(var.memory_size) == var.memory_size
    error_message = "memory_size must be a whole number of MB between 128 and 10240."
  }
}

variable "timeout" {
  description = "Function timeout in seconds. API Gateway HTTP APIs end a request after 30 s, so a longer timeout would only bill work nobody receives."
  type        = number
  default     = 29

  validation {
    condition     = var.timeout >= 1 && var.timeout <= 30 && floor(var.timeout) == var.timeout
    error_message = "timeout must be a whole number of seconds between 1 and 30."
  }
}

variable "reserved_concurrency" {
  description = "Reserved concurrent executions of the function: caps its cost and what it can take from the account's pool. 0 stops all invocations (a kill switch); -1 removes the reservation."
  type        = number
  default     = 10

  validation {
    condition     = var.reserved_concurrency >= -1 && floor(var.reserved_concurrency) == var.reserved_concurrency
    error_message = "reserved_concurrency must be a whole number, -1 (unreserved) or more."
  }
}

variable "tracing_enabled" {
  description = "Active AWS X-Ray tracing of the function (adds the AWSXRayDaemonWriteAccess managed policy to its role). False: PassThrough."
  type        = bool
  default     = true
}

variable "snap_start" {
  description = "Lambda SnapStart for published versions: init (encoder, classifier, AWS clients, with EDGECACHE_EAGER_INIT=1) runs once at publish time and new containers resume from its snapshot. API Gateway then invokes the published version."
  type        = bool
  default     = true
}

variable "extra_environment" {
  description = "More environment variables for the function, e.g. EDGECACHE_CONFIG (CacheConfig as JSON), EDGECACHE_MAX_USERS, or EDGECACHE_HOME (default /opt/edgecache-home, the layer built by functions/build_layer.py). The module's storage and upstream settings win over these."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_environment) : can(regex("^[A-Za-z][A-Za-z0-9_]*$", k)) && !startswith(k, "AWS_")])
    error_message = "extra_environment keys must be letters, digits and underscores, start with a letter and not start with AWS_ (reserved by Lambda)."
  }
}

# -- upstream LLM ------------------------------------------------------------------------

variable "upstream_url" {
  description = "Base URL of the OpenAI-compatible upstream that answers cache misses (EDGECACHE_UPSTREAM_URL), e.g. https://api.openai.com/v1."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s/]+", var.upstream_url))
    error_message = "upstream_url must be an https:// URL."
  }
}

variable "upstream_api_key_secret_arn" {
  description = "Full ARN (with its 6-character suffix) of the Secrets Manager secret holding the upstream API key. The function gets its ARN (EDGECACHE_UPSTREAM_SECRET_ARN) and reads the value at cold start; the role may read exactly this secret."
  type        = string

  validation {
    condition     = can(regex("^arn:aws[a-z-]*:secretsmanager:[a-z0-9-]+:[0-9]{12}:secret:[A-Za-z0-9/_+=.@-]+-[A-Za-z0-9]{6}$", var.upstream_api_key_secret_arn))
    error_message = "upstream_api_key_secret_arn must be the full ARN of a Secrets Manager secret, including its 6-character suffix."
  }
}

variable "upstream_api_key_kms_key_arn" {
  description = "ARN of the customer managed KMS key that encrypts the upstream API key secret, if it is not the default aws/secretsmanager key: the role may then decrypt with it through Secrets Manager only."
  type        = string
  default     = null

  validation {
    condition     = var.upstream_api_key_kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.upstream_api_key_kms_key_arn))
    error_message = "upstream_api_key_kms_key_arn must be null or a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

# -- authentication ----------------------------------------------------------------------

variable "jwt_issuer" {
  description = "Issuer URL of the JWT authorizer (the `iss` claim), e.g. https://cognito-idp.REGION.amazonaws.com/POOL_ID. Its /.well-known/openid-configuration must be reachable by API Gateway."
  type        = string

  validation {
    condition     = can(regex("^https://[^\\s/]+", var.jwt_issuer))
    error_message = "jwt_issuer must be an https:// URL."
  }
}

variable "jwt_audience" {
  description = "Accepted audiences of the JWT authorizer (the `aud` claim, or `client_id` for Cognito access tokens)."
  type        = list(string)

  validation {
    condition     = length(var.jwt_audience) > 0 && alltrue([for a in var.jwt_audience : length(trimspace(a)) > 0])
    error_message = "jwt_audience must hold at least one non-empty audience."
  }
}

variable "jwt_scopes" {
  description = "OAuth scopes a token must carry on every route (any one of them). Empty: no scope check."
  type        = list(string)
  default     = []
}

variable "routes" {
  description = "Route keys served by the function. Every route requires the JWT authorizer: there is no unauthenticated route."
  type        = list(string)
  default = [
    "POST /v1/lookup",
    "POST /v1/insert",
    "POST /v1/feedback",
    "POST /v1/delete",
    "POST /v1/chat/completions",
  ]

  validation {
    condition     = length(var.routes) > 0 && alltrue([for r in var.routes : can(regex("^(GET|POST|PUT|PATCH|DELETE) /v1(/[A-Za-z0-9._-]+)+$", r))])
    error_message = "routes must be non-empty and each route key 'METHOD /v1/path' with a concrete method and path (no ANY, no $default, no greedy path)."
  }
}

variable "throttling_burst_limit" {
  description = "Burst limit (requests) of every route of the API stage."
  type        = number
  default     = 200

  validation {
    condition     = var.throttling_burst_limit >= 1 && floor(var.throttling_burst_limit) == var.throttling_burst_limit
    error_message = "throttling_burst_limit must be a whole number of at least 1."
  }
}

variable "throttling_rate_limit" {
  description = "Steady-state rate limit (requests per second) of every route of the API stage."
  type        = number
  default     = 100

  validation {
    condition     = var.throttling_rate_limit > 0
    error_message = "throttling_rate_limit must be positive."
  }
}

variable "cors_allow_origins" {
  description = "Origins allowed to call the API from a browser (CORS). Empty: no CORS configuration."
  type        = list(string)
  default     = []

  validation {
    condition     = alltrue([for o in var.cors_allow_origins : can(regex("^https?://[^\\s/]+$", o))])
    error_message = "cors_allow_origins must be scheme://host[:port] origins (no wildcard, no path)."
  }
}

# -- storage -----------------------------------------------------------------------------

variable "bucket_name" {
  description = "Name of the snapshot bucket. Null: a unique name starting with \"<name>-snapshots-\"."
  type        = string
  default     = null

  validation {
    condition     = var.bucket_name == null || can(regex("^[a-z0-9][a-z0-9.-]{1,61}[a-z0-9]$", var.bucket_name))
    error_message = "bucket_name must be null or a valid S3 bucket name (3-63 lowercase letters, digits, dots and hyphens)."
  }
}

variable "table_name" {
  description = "Name of the DynamoDB table for response bodies. Null: \"<name>-bodies\"."
  type        = string
  default     = null

  validation {
    condition     = var.table_name == null || can(regex("^[A-Za-z0-9_.-]{3,255}$", var.table_name))
    error_message = "table_name must be null or 3-255 letters, digits, underscores, dots and hyphens."
  }
}

variable "snapshot_sse_algorithm" {
  description = "Default encryption of the snapshot bucket: aws:kms (kms_key_arn, or the account's aws/s3 key when that is null, with an S3 Bucket Key) or AES256 (SSE-S3). Also passed to the function as EDGECACHE_S3_SSE (and the key as EDGECACHE_S3_KMS_KEY_ID) for S3Store, which requests SSE explicitly on every write."
  type        = string
  default     = "aws:kms"

  validation {
    condition     = contains(["aws:kms", "AES256"], var.snapshot_sse_algorithm)
    error_message = "snapshot_sse_algorithm must be aws:kms or AES256."
  }
}

variable "kms_key_arn" {
  description = "Customer managed KMS key for the bucket (with aws:kms), the table, the log groups and the function's environment. Null: AWS managed keys. Its key policy must allow the CloudWatch Logs service principal of the region."
  type        = string
  default     = null

  validation {
    condition     = var.kms_key_arn == null || can(regex("^arn:aws[a-z-]*:kms:[a-z0-9-]+:[0-9]{12}:key/.+$", var.kms_key_arn))
    error_message = "kms_key_arn must be null or a KMS key ARN (arn:aws:kms:REGION:ACCOUNT:key/ID)."
  }
}

variable "noncurrent_version_expiration_days" {
  description = "Days after which a replaced or deleted snapshot version is removed for good."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_expiration_days >= 1 && floor(var.noncurrent_version_expiration_days) == var.noncurrent_version_expiration_days
    error_message = "noncurrent_version_expiration_days must be a whole number of at least 1."
  }
}

variable "abort_incomplete_multipart_upload_days" {
  description = "Days after which an unfinished multipart upload to the snapshot bucket is aborted and its parts deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.abort_incomplete_multipart_upload_days >= 1 && floor(var.abort_incomplete_multipart_upload_days) == var.abort_incomplete_multipart_upload_days
    error_message = "abort_incomplete_multipart_upload_days must be a whole number of at least 1."
  }
}

variable "deletion_protection" {
  description = "DynamoDB deletion protection for the response-body table."
  type        = bool
  default     = true
}

# -- logs --------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Retention of the function's and the API's CloudWatch log groups, in days (a value CloudWatch accepts)."
  type        = number
  default     = 30

  validation {
    condition     = contains([1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653], var.log_retention_days)
    error_message = "log_retention_days must be one of 1, 3, 5, 7, 14, 30, 60, 90, 120, 150, 180, 365, 400, 545, 731, 1096, 1827, 2192, 2557, 2922, 3288, 3653."
  }
}
