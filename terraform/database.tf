# --- Metadata: RDS PostgreSQL, reachable only from the brokers, over TLS.

resource "aws_security_group" "database" {
  name        = "${var.name}-database"
  description = "Tributary metadata database: PostgreSQL from the brokers only"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "database_from_brokers" {
  security_group_id            = aws_security_group.database.id
  referenced_security_group_id = aws_security_group.broker.id
  ip_protocol                  = "tcp"
  from_port                    = 5432
  to_port                      = 5432
  description                  = "PostgreSQL from the brokers"
}

resource "aws_db_subnet_group" "this" {
  name       = "${var.name}-metadata"
  subnet_ids = var.subnet_ids
  tags       = local.tags
}

resource "aws_db_instance" "metadata" {
  identifier                 = "${var.name}-metadata"
  engine                     = "postgres"
  engine_version             = var.db_engine_version
  instance_class             = var.db_instance_class
  allocated_storage          = var.db_allocated_storage
  storage_encrypted          = true
  db_name                    = "tributary"
  username                   = var.db_username
  password                   = var.db_password
  db_subnet_group_name       = aws_db_subnet_group.this.name
  vpc_security_group_ids     = [aws_security_group.database.id]
  multi_az                   = var.db_multi_az
  deletion_protection        = var.db_deletion_protection
  skip_final_snapshot        = !var.db_deletion_protection
  final_snapshot_identifier  = var.db_deletion_protection ? "${var.name}-metadata-final" : null
  backup_retention_period    = 7
  auto_minor_version_upgrade = true
  publicly_accessible        = false
  tags                       = local.tags
}

# The brokers get the whole connection string from Secrets Manager, never in
# plain task-definition environment.
resource "aws_secretsmanager_secret" "metadata" {
  name_prefix = "${var.name}-metadata-url-"
  description = "Tributary metadata store URL (TRIBUTARY_METADATA)"
  tags        = local.tags
}

resource "aws_secretsmanager_secret_version" "metadata" {
  secret_id = aws_secretsmanager_secret.metadata.id
  secret_string = format(
    "postgres://%s:%s@%s/%s?sslmode=require",
    urlencode(var.db_username),
    urlencode(var.db_password),
    aws_db_instance.metadata.endpoint,
    aws_db_instance.metadata.db_name,
  )
}
