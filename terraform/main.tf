# Tributary on AWS: stateless brokers on ECS Fargate behind a network load
# balancer, segment objects in S3, metadata in RDS PostgreSQL.
#
# Clients bootstrap through the load balancer; Metadata answers then name the
# brokers by their task addresses (each broker advertises its own IP), so
# clients must reach the tasks' subnets (same VPC, peering or VPN), as with
# any Kafka cluster.

data "aws_region" "current" {}

locals {
  object_store = "s3://${module.bucket.name}/${var.bucket_prefix}?region=${data.aws_region.current.name}"
  tags         = merge({ "app" = "tributary" }, var.tags)
}

module "bucket" {
  source        = "./modules/bucket"
  name          = var.bucket_name
  force_destroy = var.bucket_force_destroy
  tags          = local.tags
}

# --- IAM: the brokers may use their prefix of the bucket and nothing else.

data "aws_iam_policy_document" "ecs_assume" {
  statement {
    actions = ["sts:AssumeRole"]
    principals {
      type        = "Service"
      identifiers = ["ecs-tasks.amazonaws.com"]
    }
  }
}

resource "aws_iam_role" "broker" {
  name               = "${var.name}-broker"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

data "aws_iam_policy_document" "broker" {
  # ListBucket without a prefix condition: HeadBucket (the start-up check) and
  # HEAD of a missing key (answered 404 instead of 403) need it, and the
  # bucket is Tributary's alone.
  statement {
    sid       = "ListBucket"
    actions   = ["s3:ListBucket"]
    resources = [module.bucket.arn]
  }
  statement {
    sid = "ObjectsUnderOwnPrefix"
    actions = [
      "s3:GetObject",
      "s3:PutObject",
      "s3:DeleteObject",
      "s3:AbortMultipartUpload",
      "s3:ListMultipartUploadParts",
    ]
    resources = ["${module.bucket.arn}/${var.bucket_prefix}/*"]
  }
  statement {
    sid       = "CheckBucket"
    actions   = ["s3:GetBucketLocation"]
    resources = [module.bucket.arn]
  }
}

resource "aws_iam_role_policy" "broker" {
  name   = "${var.name}-broker-bucket"
  role   = aws_iam_role.broker.id
  policy = data.aws_iam_policy_document.broker.json
}

# The execution role pulls the image, writes logs and reads the database
# connection string (and, with SASL_SSL, the certificate, key and admin
# password).
resource "aws_iam_role" "execution" {
  name               = "${var.name}-execution"
  assume_role_policy = data.aws_iam_policy_document.ecs_assume.json
  tags               = local.tags
}

resource "aws_iam_role_policy_attachment" "execution" {
  role       = aws_iam_role.execution.name
  policy_arn = "arn:aws:iam::aws:policy/service-role/AmazonECSTaskExecutionRolePolicy"
}

data "aws_iam_policy_document" "execution_secret" {
  statement {
    actions   = ["secretsmanager:GetSecretValue"]
    resources = local.secret_arns
  }
}

resource "aws_iam_role_policy" "execution_secret" {
  name   = "${var.name}-metadata-secret"
  role   = aws_iam_role.execution.id
  policy = data.aws_iam_policy_document.execution_secret.json
}
