terraform {
  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = "~> 5.0"
    }
  }
}

# Instances for the build system; ignore changes to tags made by the cost tool.
resource "aws_instance" "build" {
  count         = 2
  ami           = var.ami_id
  instance_type = "t3.large"

  lifecycle {
    ignore_changes = [tags["CostCenter"]]
  }
}
