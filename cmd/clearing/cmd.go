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
		Use:   "clearing",
		Short: "gongji national clearing service: switch, usage collection, monthly settlement, exports",
		Long: "clearing serves the national clearing service (gongji.clearing.v1) over mutual TLS and offers the\n" +
			"operator and auditor commands: periods, prepayment, exports and their verification." + config.EnvHelp,
		SilenceUsage:      true,
		PersistentPreRunE: func(cmd *cobra.Command, _ []string) error { return config.BindEnv(cmd) },
	}
	root.AddCommand(serveCmd(), migrateCmd(), certsCmd(), periodCmd(), prepayCmd(), journalCmd(), exportCmd(), verifyCmd())
	return root
}

func migrateCmd() *cobra.Command {
	var dbURL string
	cmd := &cobra.Command{
		Use:   "migrate up|down [VERSION]|version",
		Short: "apply or roll back the clearing database migrations (serve applies them on start)",
		Args:  cobra.RangeArgs(1, 2),
		RunE: func(cmd *cobra.Command, args []string) error {
			if dbURL == "" {
				return fmt.Errorf("--database-url is required")
			}
			ctx, stop := signal.NotifyContext(cmd.Context(), syscall.SIGINT, syscall.SIGTERM)
			defer stop()
			return migrations.Command(ctx, dbURL, migrations.Clearing, args, os.Stdout)
		},
	}
	cmd.Flags().StringVar(&dbURL, "database-url", "", "PostgreSQL URL of the clearing database")
	return cmd
}
