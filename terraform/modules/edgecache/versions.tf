terraform {
  # 1.5: the oldest release this module is written for (validation blocks, optional
  # attributes, `nullable`); nothing newer is required.
  required_version = ">= 1.5.0"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 5.0"
    }
  }
}
