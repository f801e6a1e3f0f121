package main

import (
	"context"
	"errors"
	"io"
)

var errTODO = errors.New("not implemented yet")

func runDemo(ctx context.Context, args []string, stdout, stderr io.Writer) error  { return errTODO }
func runDown(args []string, stdout io.Writer) error                               { return errTODO }
func runBench(ctx context.Context, args []string, stdout, stderr io.Writer) error { return errTODO }
