variable "name" {
  description = "Name prefix for every resource (cluster, service, roles, database)."
  type        = string
  default     = "tributary"
}

variable "vpc_id" {
  description = "VPC the brokers, the load balancer and the database run in."
  type        = string
}

variable "subnet_ids" {
  description = "Private subnets (at least two, in different zones) for brokers, load balancer and database."
  type        = list(string)
}

variable "allowed_cidrs" {
  description = "CIDR blocks allowed to reach the Kafka port, on the load balancer and on the brokers (clients talk to both). The admin port is open to the load balancer only."
  type        = list(string)
}

variable "image" {
  description = "Broker container image (built from this repository's Dockerfile), e.g. ghcr.io/acme/tributary:0.1.0."
  type        = string
}

variable "broker_count" {
  description = "Number of broker tasks. Brokers are stateless; scale freely."
  type        = number
  default     = 3
}

variable "broker_cpu" {
  description = "Fargate CPU units per broker (1024 = 1 vCPU)."
  type        = number
  default     = 1024
}

variable "broker_memory" {
  description = "Fargate memory per broker, MiB."
  type        = number
  default     = 2048
}

variable "cache_bytes" {
  description = "Read cache per broker, bytes (keep well under broker_memory)."
  type        = number
  default     = 536870912
}

variable "kafka_port" {
  description = "Kafka port of the brokers and the load balancer."
  type        = number
  default     = 9092
}

variable "admin_port" {
  description = "HTTP port with /metrics, /healthz and /readyz (load balancer health checks)."
  type        = number
  default     = 9464
}

variable "internal" {
  description = "Make the network load balancer internal (clients in the VPC or peered networks)."
  type        = bool
  default     = true
}

variable "bucket_name" {
  description = "S3 bucket for the segment objects; created by this module."
  type        = string
}

variable "bucket_prefix" {
  description = "Key prefix inside the bucket; the brokers may touch nothing else."
  type        = string
  default     = "tributary"
}

variable "bucket_force_destroy" {
  description = "Let `terraform destroy` delete the bucket with its objects (all topic data)."
  type        = bool
  default     = false
}

variable "db_instance_class" {
  description = "RDS instance class of the metadata database."
  type        = string
  default     = "db.t4g.medium"
}

variable "db_engine_version" {
  description = "PostgreSQL major version."
  type        = string
  default     = "16"
}

variable "db_allocated_storage" {
  description = "Database storage, GiB."
  type        = number
  default     = 20
}

variable "db_username" {
  description = "Master user of the metadata database."
  type        = string
  default     = "tributary"
}

variable "db_password" {
  description = "Master password of the metadata database (stored in Secrets Manager inside the connection string)."
  type        = string
  sensitive   = true
}

variable "db_multi_az" {
  description = "Run the metadata database in two zones."
  type        = bool
  default     = true
}

variable "db_deletion_protection" {
  description = "Protect the metadata database from deletion."
  type        = bool
  default     = true
}

variable "log_retention_days" {
  description = "CloudWatch log retention for the brokers."
  type        = number
  default     = 30
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
  default     = {}
}

# --- Security (SASL_SSL listener, users, ACLs)

variable "enable_sasl_ssl" {
  description = "Add a SASL_SSL listener on sasl_ssl_port (TLS with tls_certificate_pem, SCRAM logins, ACLs with the admin as super user). The PLAINTEXT listener on kafka_port stays; with the authorizer on it serves only what ACLs grant User:ANONYMOUS."
  type        = bool
  default     = false
}

variable "sasl_ssl_port" {
  description = "Port of the SASL_SSL listener (brokers and load balancer)."
  type        = number
  default     = 9094
}

variable "tls_certificate_pem" {
  description = "PEM certificate chain of the SASL_SSL listener (stored in Secrets Manager). It must be valid for the names clients connect to: the load balancer and the brokers' advertised addresses (see the README)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "tls_private_key_pem" {
  description = "PEM private key of tls_certificate_pem (stored in Secrets Manager)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "admin_user" {
  description = "The first SCRAM user, created (or its password reset) by each task before its broker starts; a super user."
  type        = string
  default     = "admin"
}

variable "admin_password" {
  description = "Password of admin_user (stored in Secrets Manager; at least 12 characters)."
  type        = string
  default     = ""
  sensitive   = true
}

variable "sasl_mechanisms" {
  description = "SASL mechanisms offered on the SASL_SSL listener."
  type        = string
  default     = "SCRAM-SHA-512,SCRAM-SHA-256"
}

variable "enable_acls" {
  description = "With enable_sasl_ssl: check ACLs (--authorizer acl); admin_user and extra_super_users may do everything."
  type        = bool
  default     = true
}

variable "extra_super_users" {
  description = "Principals besides admin_user allowed everything (e.g. [\"User:CN=ops\"])."
  type        = list(string)
  default     = []
}
