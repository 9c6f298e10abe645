{{/*
Expand the name of the chart.
*/}}
{{- define "knas.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
A default fully qualified app name, truncated at 63 characters (DNS names are limited).
If the release name contains the chart name it is used as the full name.
*/}}
{{- define "knas.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/*
Chart name and version, for the chart label.
*/}}
{{- define "knas.chart" -}}
{{- printf "%s-%s" .Chart.Name .Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/*
Common labels.
*/}}
{{- define "knas.labels" -}}
helm.sh/chart: {{ include "knas.chart" . }}
{{ include "knas.selectorLabels" . }}
app.kubernetes.io/version: {{ .Values.image.tag | default .Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .Release.Service }}
{{- end }}

{{/*
Selector labels.
*/}}
{{- define "knas.selectorLabels" -}}
app.kubernetes.io/name: {{ include "knas.name" . }}
app.kubernetes.io/instance: {{ .Release.Name }}
{{- end }}

{{/*
The service account to use.
*/}}
{{- define "knas.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "knas.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{/*
The knas configuration file: the user's `config` with the chart's paths and address.
*/}}
{{- define "knas.config" -}}
{{- $config := deepCopy .Values.config }}
{{- $_ := set $config "listen" (printf "0.0.0.0:%d" (int .Values.service.port)) }}
{{- $_ := set $config "policy-dir" "/var/lib/knas/policies" }}
{{- $_ := set $config "store" "/var/lib/knas/store/knas-runs.db" }}
{{- if .Values.gpu.enabled }}
{{- $_ := set $config "device" "cuda" }}
{{- end }}
{{- toYaml $config }}
{{- end }}

{{/*
A duration the schema admits (`15s`, `500ms`, `1m`, `2h`) in milliseconds.
*/}}
{{- define "knas.durationMs" -}}
{{- $count := regexFind "^[0-9]+" . }}
{{- $unit := trimPrefix $count . }}
{{- mul (int64 $count) (get (dict "ms" 1 "s" 1000 "m" 60000 "h" 3600000) $unit) }}
{{- end }}

{{/*
A scrape's interval and timeout, checked against each other: Prometheus refuses a scrape
whose timeout is longer than its interval (the Operator drops such a monitor, with only a
line in its own log; an older one hands the pair on and Prometheus rejects its whole
configuration). Called with (list KEY VALUES).
*/}}
{{- define "knas.scrapeTiming" -}}
{{- $key := index . 0 }}
{{- $monitor := index . 1 }}
{{- if gt (int64 (include "knas.durationMs" $monitor.scrapeTimeout)) (int64 (include "knas.durationMs" $monitor.interval)) }}
{{- fail (printf "%s.scrapeTimeout (%s) is longer than %s.interval (%s): Prometheus refuses such a scrape configuration" $key $monitor.scrapeTimeout $key $monitor.interval) }}
{{- end }}
interval: {{ $monitor.interval }}
scrapeTimeout: {{ $monitor.scrapeTimeout }}
{{- end }}
