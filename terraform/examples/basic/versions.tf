terraform {
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }

  # Keep the state somewhere shared and locked in real use, e.g.
  # backend "s3" { bucket = "my-tf-state" key = "edgecache/basic.tfstate" region = "eu-west-1" use_lockfile = true }
}

provider "aws" {
  region = var.region

  default_tags {
    tags = {
      project = "edgecache"
      example = "basic"
    }
  }
}
