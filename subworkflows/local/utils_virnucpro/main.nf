/*
 * Parameter checks, the samplesheet and --help, read from nextflow_schema.json and
 * assets/schema_input.json without a plugin: nf-schema comes from GitHub, and a pipeline
 * that includes it cannot start where only Maven Central is reachable. The schema keywords
 * the two files use (required, type, enum, minimum, pattern, exists, uniqueEntries) are
 * checked here; each problem stops the run before any task with one line naming it.
 */

def schemaProperties(schemaPath) {
    def schema = new groovy.json.JsonSlurper().parse(new File(schemaPath.toString()))
    def found = [:]
    def required = []
    schema['$defs'].each { _name, group ->
        found.putAll(group['properties'])
        required.addAll(group['required'] ?: [])
    }
    return [found, required]
}

def problemWith(name, value, spec) {
    def shown = value instanceof String ? "'${value}'" : value
    if (spec.type == 'integer' && !(value instanceof Integer || value instanceof Long)) {
        return "--${name}: must be a whole number (got ${shown})"
    }
    if (spec.type == 'boolean' && !(value instanceof Boolean)) {
        return "--${name}: must be true or false (got ${shown})"
    }
    if (spec.type == 'string' && !(value instanceof CharSequence || value instanceof Number)) {
        return "--${name}: must be a text value (got ${shown})"
    }
    if (spec['enum'] != null && !spec['enum'].collect { v -> v.toString() }.contains(value.toString())) {
        return "--${name}: must be one of ${spec['enum'].join(', ')} (got ${shown})"
    }
    if (spec.minimum != null && value < spec.minimum) {
        return "--${name}: must be at least ${spec.minimum} (got ${shown})"
    }
    if (spec.pattern != null && !(value.toString() ==~ spec.pattern)) {
        return spec.errorMessage ?: "--${name}: does not match ${spec.pattern} (got ${shown})"
    }
    if (spec.exists && !file(value.toString()).exists()) {
        return "--${name}: ${value}: no such ${spec.format == 'directory-path' ? 'directory' : 'file'}"
    }
    return null
}

def validateParams(given, schemaPath) {
    def (properties, required) = schemaProperties(schemaPath)
    required.each { name ->
        if (given[name] == null) {
            error("virnucpro: --${name} is required (nextflow run . --help lists the parameters)")
        }
    }
    given.each { name, value ->
        def spec = properties[name]
        if (spec == null) {
            if (name != 'help') {
                log.warn("virnucpro: unknown parameter --${name} (ignored; --help lists the parameters)")
            }
            return
        }
        def problem = value == null ? null : problemWith(name, value, spec)
        if (problem) {
            error("virnucpro: ${problem}")
        }
    }
}

def readSamplesheet(samplesheet, schemaPath) {
    def schema = new groovy.json.JsonSlurper().parse(new File(schemaPath.toString()))
    def columns = schema.items['properties']
    def sheet = file(samplesheet)
    def lines = sheet.readLines().findAll { line -> line.trim() }
    if (!lines) {
        error("virnucpro: ${samplesheet}: empty samplesheet (expected a header 'sample,fasta' and one row per sample)")
    }
    def header = lines[0].split(',', -1).collect { c -> c.trim() }
    def wanted = schema.items.required
    if (header.sort(false) != wanted.sort(false)) {
        error("virnucpro: ${samplesheet}: header is '${lines[0]}', expected '${wanted.join(',')}'")
    }
    if (lines.size() == 1) {
        error("virnucpro: ${samplesheet}: no samples (only a header)")
    }
    def rows = []
    def seen = [:]
    lines.drop(1).eachWithIndex { line, index ->
        def where = "${samplesheet} line ${index + 2}"
        def values = line.split(',', -1).collect { c -> c.trim() }
        if (values.size() != header.size()) {
            error("virnucpro: ${where}: ${values.size()} columns, the header has ${header.size()}")
        }
        def row = [header, values].transpose().collectEntries { kv -> [kv[0], kv[1]] }
        header.each { name ->
            def spec = columns[name]
            if (!(row[name] ==~ spec.pattern)) {
                error("virnucpro: ${where}: ${spec.errorMessage} (got '${row[name]}')")
            }
        }
        if (seen.containsKey(row.sample)) {
            error("virnucpro: ${where}: sample '${row.sample}' already on line ${seen[row.sample]}")
        }
        seen[row.sample] = index + 2
        def fasta = file(row.fasta)
        if (!fasta.exists()) {
            error("virnucpro: ${where}: ${row.fasta}: no such file")
        }
        rows << [[id: row.sample], fasta]
    }
    return rows
}

def helpText(schemaPath) {
    def schema = new groovy.json.JsonSlurper().parse(new File(schemaPath.toString()))
    def text = ["virnucpro: ${schema.description}", '',
        'Usage: nextflow run . -profile <test|gpu|slurm|docker|apptainer,...> --input <FASTA or samplesheet.csv> --outdir <dir>']
    schema['$defs'].each { _name, group ->
        text << '' << "${group.title}:"
        group['properties'].each { name, spec ->
            if (!spec.hidden) {
                def shown = spec.default != null ? " [default: ${spec.default}]" : ''
                text << "  --${name.padRight(22)} ${spec.description}${shown}"
            }
        }
    }
    text << '' << 'Docs: docs/usage.md (profiles, SLURM, GPUs), docs/outputs.md (the result files).'
    return text.join('\n')
}
