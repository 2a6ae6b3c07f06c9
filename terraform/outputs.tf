output "bootstrap_servers" {
  description = "Kafka bootstrap address (the network load balancer)."
  value       = "${aws_lb.this.dns_name}:${var.kafka_port}"
}

output "bucket" {
  description = "Bucket holding the segment objects."
  value       = module.bucket.name
}

output "object_store_url" {
  description = "The --object-store URL the brokers use (also for `tributary export`)."
  value       = local.object_store
}

output "database_endpoint" {
  description = "Metadata database endpoint (host:port)."
  value       = aws_db_instance.metadata.endpoint
}

output "metadata_secret_arn" {
  description = "Secrets Manager secret holding the metadata URL (TRIBUTARY_METADATA)."
  value       = aws_secretsmanager_secret.metadata.arn
}

output "log_group" {
  description = "CloudWatch log group of the brokers."
  value       = aws_cloudwatch_log_group.broker.name
}

output "sasl_ssl_bootstrap_servers" {
  description = "Kafka bootstrap address of the SASL_SSL listener (null without enable_sasl_ssl)."
  value       = var.enable_sasl_ssl ? "${aws_lb.this.dns_name}:${var.sasl_ssl_port}" : null
}

output "security_secret_arns" {
  description = "Secrets Manager secrets of the SASL_SSL listener (certificate, key, admin password); empty without enable_sasl_ssl."
  value       = { for k, s in aws_secretsmanager_secret.security : k => s.arn }
}
