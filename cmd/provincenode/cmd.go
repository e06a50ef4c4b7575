package main

import (
	"fmt"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"gongji/config"
	"gongji/migrations"
)

func rootCmd() *cobra.Command {
	root := &cobra.Command{
		Use:   "provincenode",
		Short: "gongji province node: people, sharing relationships, quotas and usage of one province",
		Long: "provincenode serves the gRPC API of one province node (gongji.province.v1) over mutual TLS,\n" +
			"keeps its own PostgreSQL database, and streams its outbox to the national clearing service." + config.EnvHelp,
		SilenceUsage:      true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return config.BindEnv(cmd) },
	}
	root.AddCommand(serveCmd(), migrateCmd())
	return root
}

func migrateCmd() *cobra.Command {
	var dbURL string
	cmd := &cobra.Command{
		Use:   "migrate up|down [VERSION]|version",
		Short: "apply or roll back the province database migrations (serve applies them on start)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dbURL == "" {
				return fmt.Errorf("--database-url is required")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return migrations.Command(ctx, dbURL, migrations.Province, args, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&dbURL, "database-url", "", "PostgreSQL URL of this node's database")
	return cmd
}
