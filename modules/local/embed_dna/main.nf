process EMBED_DNA {
    // '[gpu]' in the tag marks GPU tasks in the trace, timeline and report.
    tag "${meta.id} [gpu]"
    label 'process_gpu'
    container 'ghcr.io/virnucpro/virnucpro:0.1.0-cuda'

    input:
    tuple val(meta), path(nucleotide)
    path models

    output:
    tuple val(meta), path("${meta.shard}.dnabert.safetensors"), emit: features
    path "versions.yml"                                        , emit: versions

    when:
    task.ext.when == null || task.ext.when

    script:
    // -profile gpu (accelerator set): a GPU is required, claimed by lock file among the visible
    // ones (docs/usage.md); otherwise the task uses a GPU if it sees one, else the CPU
    def args = task.ext.args ?: ''
    def device = task.accelerator ? '--device cuda' : '--device auto'
    """
    virnucpro embed-dna ${nucleotide} --models ${models} --outdir . ${device} --threads ${task.cpus} ${args}

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
    \$(virnucpro versions --indent 4)
    END_VERSIONS
    """

    stub:
    """
    touch ${meta.shard}.dnabert.safetensors

    cat <<-END_VERSIONS > versions.yml
    "${task.process}":
        virnucpro: 0.1.0
    END_VERSIONS
    """
}
