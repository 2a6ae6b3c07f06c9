# Tributary's bucket on a LocalStack running on this machine (S3 is in
# LocalStack's free edition; ECS, RDS and load balancers are not, so the
# brokers and PostgreSQL run locally). Prints the `tributary serve` command
# that uses the bucket, and, given a certificate directory
# (localstack/make-certs.sh DIR: a development CA), the commands for a
# broker with a SASL_SSL listener and ACLs.
#
#   terraform init && terraform apply -auto-approve -var endpoint=http://127.0.0.1:4566 [-var certs_dir=DIR]

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

variable "certs_dir" {
  description = "Directory with server.pem and server.key (localstack/make-certs.sh DIR) for the SASL_SSL commands; empty: none."
  type        = string
  default     = ""
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

output "users_add_command" {
  description = "Create the admin user the SASL_SSL broker's super user is (before serve_sasl_ssl_command; password from the environment)."
  value       = var.certs_dir == "" ? null : "TRIBUTARY_USER_PASSWORD=admin-secret tributary users add admin"
}

output "serve_sasl_ssl_command" {
  description = "Run a broker on the bucket with PLAINTEXT on 9092 and SASL_SSL on 9094 (SCRAM, the certificate in certs_dir), ACLs on, admin a super user."
  value = var.certs_dir == "" ? null : join(" ", [
    "AWS_ACCESS_KEY_ID=test AWS_SECRET_ACCESS_KEY=test AWS_REGION=us-east-1 tributary serve",
    "--object-store '${local.object_store}'",
    "--listeners 'PLAINTEXT://127.0.0.1:9092,SASL_SSL://127.0.0.1:9094'",
    "--tls-cert '${var.certs_dir}/server.pem' --tls-key '${var.certs_dir}/server.key'",
    "--sasl-mechanisms SCRAM-SHA-512,SCRAM-SHA-256 --authorizer acl --super-users User:admin",
  ])
}
