# Tributary's bucket on a LocalStack running on this machine (S3 is in
# LocalStack's free edition; ECS, RDS and load balancers are not, so the
# brokers and PostgreSQL run locally). Prints the `tributary serve` command
# that uses the bucket.
#
#   terraform init && terraform apply -auto-approve -var endpoint=http://127.0.0.1:4566

variable "endpoint" {
  description = "LocalStack gateway URL."
  type        = string
  default     = "http://127.0.0.1:4566"
}

variable "bucket_name" {
  description = "Bucket to create."
  type        = string
  default     = "tributary-local"
}

variable "prefix" {
  description = "Key prefix the broker writes under."
  type        = string
  default     = "dev"
}

provider "aws" {
  region                      = "us-east-1"
  access_key                  = "test"
  secret_key                  = "test"
  skip_credentials_validation = true
  skip_metadata_api_check     = true
  skip_requesting_account_id  = true
  s3_use_path_style           = true
  endpoints {
    s3  = var.endpoint
    sts = var.endpoint
  }
}

module "bucket" {
  source        = "../../modules/bucket"
  name          = var.bucket_name
  force_destroy = true
}

locals {
  object_store = "s3://${module.bucket.name}/${var.prefix}?endpoint=${var.endpoint}&path_style=true&region=us-east-1"
}

output "object_store_url" {
  description = "The --object-store URL for the bucket."
  value       = local.object_store
}

output "serve_command" {
  description = "Run a broker on the bucket (SQLite metadata in ./data)."
  value       = "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 tributary serve --object-store '${local.object_store}'"
}
