# --- Brokers: an ECS Fargate service behind a network load balancer.

resource "aws_security_group" "broker" {
  name        = "${var.name}-broker"
  description = "Tributary brokers: Kafka from the allowed CIDRs and the load balancer"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

# The load balancer has its own group, so only the allowed CIDRs reach it
# (with IP targets the brokers see the load balancer's address, not the
# client's).
resource "aws_security_group" "load_balancer" {
  name        = "${var.name}-nlb"
  description = "Tributary load balancer: Kafka from the allowed CIDRs"
  vpc_id      = var.vpc_id
  tags        = local.tags
}

resource "aws_vpc_security_group_ingress_rule" "load_balancer_kafka" {
  for_each          = toset(var.allowed_cidrs)
  security_group_id = aws_security_group.load_balancer.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.kafka_port
  to_port           = var.kafka_port
  description       = "Kafka clients"
}

resource "aws_vpc_security_group_egress_rule" "load_balancer_to_brokers" {
  for_each = toset(concat(
    [tostring(var.kafka_port), tostring(var.admin_port)],
    local.sasl_ssl ? [tostring(var.sasl_ssl_port)] : [],
  ))
  security_group_id            = aws_security_group.load_balancer.id
  referenced_security_group_id = aws_security_group.broker.id
  ip_protocol                  = "tcp"
  from_port                    = tonumber(each.value)
  to_port                      = tonumber(each.value)
  description                  = "Traffic and health checks to the brokers"
}

resource "aws_vpc_security_group_ingress_rule" "kafka" {
  for_each          = toset(var.allowed_cidrs)
  security_group_id = aws_security_group.broker.id
  cidr_ipv4         = each.value
  ip_protocol       = "tcp"
  from_port         = var.kafka_port
  to_port           = var.kafka_port
  description       = "Kafka clients"
}

resource "aws_vpc_security_group_ingress_rule" "kafka_from_load_balancer" {
  security_group_id            = aws_security_group.broker.id
  referenced_security_group_id = aws_security_group.load_balancer.id
  ip_protocol                  = "tcp"
  from_port                    = var.kafka_port
  to_port                      = var.kafka_port
  description                  = "Kafka through the load balancer"
}

resource "aws_vpc_security_group_ingress_rule" "admin_from_load_balancer" {
  security_group_id            = aws_security_group.broker.id
  referenced_security_group_id = aws_security_group.load_balancer.id
  ip_protocol                  = "tcp"
  from_port                    = var.admin_port
  to_port                      = var.admin_port
  description                  = "Health checks (/readyz) from the load balancer"
}

resource "aws_vpc_security_group_egress_rule" "broker_all" {
  security_group_id = aws_security_group.broker.id
  cidr_ipv4         = "0.0.0.0/0"
  ip_protocol       = "-1"
  description       = "S3, PostgreSQL, image pulls, logs"
}

resource "aws_cloudwatch_log_group" "broker" {
  name              = "/ecs/${var.name}"
  retention_in_days = var.log_retention_days
  tags              = local.tags
}

resource "aws_ecs_cluster" "this" {
  name = var.name
  setting {
    name  = "containerInsights"
    value = "enabled"
  }
  tags = local.tags
}

resource "aws_ecs_task_definition" "broker" {
  family                   = "${var.name}-broker"
  requires_compatibilities = ["FARGATE"]
  network_mode             = "awsvpc"
  cpu                      = var.broker_cpu
  memory                   = var.broker_memory
  task_role_arn            = aws_iam_role.broker.arn
  execution_role_arn       = aws_iam_role.execution.arn
  container_definitions = jsonencode(concat(local.users_container, [merge({
    name      = "broker"
    image     = var.image
    essential = true
    command   = ["serve"]
    portMappings = concat(
      [
        { containerPort = var.kafka_port, protocol = "tcp" },
        { containerPort = var.admin_port, protocol = "tcp" },
      ],
      local.sasl_ssl ? [{ containerPort = var.sasl_ssl_port, protocol = "tcp" }] : [],
    )
    environment = concat(
      [
        { name = "TRIBUTARY_METRICS_LISTEN", value = "0.0.0.0:${var.admin_port}" },
        { name = "TRIBUTARY_OBJECT_STORE", value = local.object_store },
        { name = "TRIBUTARY_CACHE_BYTES", value = tostring(var.cache_bytes) },
        # Each task takes the lowest free node id and advertises its own address.
        { name = "TRIBUTARY_NODE_ID", value = "auto" },
        { name = "TRIBUTARY_DATA_DIR", value = "/tmp/tributary" },
      ],
      local.sasl_ssl ? [
        { name = "TRIBUTARY_LISTENERS", value = "PLAINTEXT://0.0.0.0:${var.kafka_port},SASL_SSL://0.0.0.0:${var.sasl_ssl_port}" },
        { name = "TRIBUTARY_SASL_MECHANISMS", value = var.sasl_mechanisms },
        ] : [
        { name = "TRIBUTARY_LISTENERS", value = "PLAINTEXT://0.0.0.0:${var.kafka_port}" },
      ],
      local.sasl_ssl && var.enable_acls ? [
        { name = "TRIBUTARY_AUTHORIZER", value = "acl" },
        { name = "TRIBUTARY_SUPER_USERS", value = local.super_users },
      ] : [],
    )
    secrets = concat(
      [{ name = "TRIBUTARY_METADATA", valueFrom = aws_secretsmanager_secret.metadata.arn }],
      local.sasl_ssl ? [
        { name = "TRIBUTARY_TLS_CERT", valueFrom = aws_secretsmanager_secret.security["tls-certificate"].arn },
        { name = "TRIBUTARY_TLS_KEY", valueFrom = aws_secretsmanager_secret.security["tls-private-key"].arn },
      ] : [],
    )
    logConfiguration = {
      logDriver = "awslogs"
      options = {
        awslogs-group         = aws_cloudwatch_log_group.broker.name
        awslogs-region        = data.aws_region.current.name
        awslogs-stream-prefix = "broker"
      }
    }
    stopTimeout = 30
    },
    # The admin user is written before the broker starts.
    { for k, v in { dependsOn = [{ containerName = "users", condition = "SUCCESS" }] } : k => v if local.sasl_ssl },
  )]))
  tags = local.tags
}

resource "aws_lb" "this" {
  name               = var.name
  load_balancer_type = "network"
  internal           = var.internal
  subnets            = var.subnet_ids
  security_groups    = [aws_security_group.load_balancer.id]
  tags               = local.tags
}

resource "aws_lb_target_group" "kafka" {
  name        = "${var.name}-kafka"
  port        = var.kafka_port
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

resource "aws_lb_listener" "kafka" {
  load_balancer_arn = aws_lb.this.arn
  port              = var.kafka_port
  protocol          = "TCP"
  default_action {
    type             = "forward"
    target_group_arn = aws_lb_target_group.kafka.arn
  }
  tags = local.tags
}

resource "aws_ecs_service" "broker" {
  name            = "${var.name}-broker"
  cluster         = aws_ecs_cluster.this.id
  task_definition = aws_ecs_task_definition.broker.arn
  desired_count   = var.broker_count
  launch_type     = "FARGATE"
  network_configuration {
    subnets          = var.subnet_ids
    security_groups  = [aws_security_group.broker.id]
    assign_public_ip = false
  }
  load_balancer {
    target_group_arn = aws_lb_target_group.kafka.arn
    container_name   = "broker"
    container_port   = var.kafka_port
  }
  dynamic "load_balancer" {
    for_each = aws_lb_target_group.sasl_ssl
    content {
      target_group_arn = load_balancer.value.arn
      container_name   = "broker"
      container_port   = var.sasl_ssl_port
    }
  }
  health_check_grace_period_seconds  = 60
  deployment_minimum_healthy_percent = 100
  deployment_maximum_percent         = 200
  depends_on = [
    aws_lb_listener.kafka,
    aws_lb_listener.sasl_ssl,
    aws_secretsmanager_secret_version.metadata,
    aws_secretsmanager_secret_version.security,
  ]
  tags = local.tags
}
