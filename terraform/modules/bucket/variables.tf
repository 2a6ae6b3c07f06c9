variable "name" {
  description = "Name of the S3 bucket that holds the segment objects."
  type        = string
}

variable "force_destroy" {
  description = "Let `terraform destroy` delete the bucket even when it still holds objects (all topic data)."
  type        = bool
  default     = false
}

variable "kms_key_arn" {
  description = "KMS key for server-side encryption; null uses SSE-S3 (AES256)."
  type        = string
  default     = null
}

variable "abort_incomplete_multipart_days" {
  description = "Days after which incomplete multipart uploads are aborted."
  type        = number
  default     = 3
}

variable "tags" {
  description = "Tags for the bucket."
  type        = map(string)
  default     = {}
}
