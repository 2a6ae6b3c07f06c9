# --- Security: the SASL_SSL listener's certificate and key and the admin
# password live in Secrets Manager; ECS hands them to the containers as
# environment variables (the broker takes PEM text in TRIBUTARY_TLS_CERT and
# TRIBUTARY_TLS_KEY as well as file paths). A one-shot container in each task
# writes the admin user into the metadata store before the broker starts.

locals {
  sasl_ssl    = var.enable_sasl_ssl
  super_users = join(",", concat(["User:${var.admin_user}"], var.extra_super_users))
  # Secrets the execution role may read.
  secret_arns = concat(
    [aws_secretsmanager_secret.metadata.arn],
    [for s in aws_secretsmanager_secret.security : s.arn],
  )
  security_secrets = local.sasl_ssl ? {
    tls-certificate = var.tls_certificate_pem
    tls-private-key = var.tls_private_key_pem
    admin-password  = var.admin_password
  } : {}
}

# A one-shot container: `tributary users add` of the admin user (password
# from Secrets Manager) into the metadata store; the broker waits for it.
locals {
  users_container = local.sasl_ssl ? [{
    name      = "users"
    image     = var.image
    essential = false
    command   = ["users", "add", var.admin_user]
    environment = [
      { name = "TRIBUTARY_DATA_DIR", value = "/tmp/tributary" },
    ]
    secrets = [
      { name = "TRIBUTARY_METADATA", valueFrom = aws_secretsmanager_secret.metadata.arn },
      { name = "TRIBUTARY_USER_PASSWORD", valueFrom = aws_secretsmanager_secret.security["admin-password"].arn },
    ]
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.broker.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "users"
      }
    }
  }] : []
}

resource "aws_secretsmanager_secret" "security" {
  for_each                = local.security_secrets
  name                    = "${var.name}/${each.key}"
  description             = "Tributary SASL_SSL: ${each.key}"
  recovery_window_in_days = 0
  tags                    = local.tags
}

resource "aws_secretsmanager_secret_version" "security" {
  for_each      = local.security_secrets
  secret_id     = aws_secretsmanager_secret.security[each.key].id
  secret_string = each.value

  lifecycle {
    precondition {
      condition = alltrue([
        startswith(trimspace(var.tls_certificate_pem), "-----BEGIN"),
        startswith(trimspace(var.tls_private_key_pem), "-----BEGIN"),
        length(var.admin_password) >= 12,
      ])
      error_message = "enable_sasl_ssl needs tls_certificate_pem and tls_private_key_pem (PEM) and an admin_password of at least 12 characters."
    }
  }
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_sasl_ssl" {
  for_each          = local.sasl_ssl ? toset(var.allowed_cidrs) : toset([])
  security_group_id = aws_security_group.load_balancer.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.sasl_ssl_port
  to_port           = var.sasl_ssl_port
  description       = "Kafka clients (SASL_SSL)"
}

resource "aws_vpc_security_group_ingress_rule" "sasl_ssl" {
  for_each          = local.sasl_ssl ? toset(var.allowed_cidrs) : toset([])
  security_group_id = aws_security_group.broker.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.sasl_ssl_port
  to_port           = var.sasl_ssl_port
  description       = "Kafka clients (SASL_SSL)"
}

resource "aws_vpc_security_group_ingress_rule" "sasl_ssl_from_load_balancer" {
  count                        = local.sasl_ssl ? 1 : 0
  security_group_id            = aws_security_group.broker.id
  referenced_security_group_id = aws_security_group.load_balancer.id
  ip_protocol                  = "tcp"
  from_port                    = var.sasl_ssl_port
  to_port                      = var.sasl_ssl_port
  description                  = "Kafka (SASL_SSL) through the load balancer"
}

# TLS passes through the load balancer (TCP) and ends at the brokers.
resource "aws_lb_target_group" "sasl_ssl" {
  count       = local.sasl_ssl ? 1 : 0
  name        = "${var.name}-sasl-ssl"
  port        = var.sasl_ssl_port
  protocol    = "TCP"
  target_type = "ip"
  vpc_id      = var.vpc_id
  health_check {
    protocol            = "HTTP"
    port                = tostring(var.admin_port)
    path                = "/readyz"
    healthy_threshold   = 2
    unhealthy_threshold = 2
    interval            = 10
  }
  deregistration_delay = 30
  tags                 = local.tags
}

resource "aws_lb_listener" "sasl_ssl" {
  count             = local.sasl_ssl ? 1 : 0
  load_balancer_arn = aws_lb.this.arn
  port              = var.sasl_ssl_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.sasl_ssl[0].arn
  }
  tags = local.tags
}
